"""cnnlab's entry point: python train.py {fit,validate,test,predict} --config configs/<experiment>.yaml"""

from cnnlab.cli import main

if __name__ == "__main__":
    main()

"""cnnlab: the command line, run directories and errors shared by every experiment."""

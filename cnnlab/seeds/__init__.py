"""Seeds at scale: run one config over many model seeds in warm worker processes (`launcher`,
`worker`), keep each seed's outcome in a per-sweep registry (`registry`), and turn the results
into distributions (`report`) and config-vs-config verdicts (`compare`). Entry: `cnnlab-seeds`.
"""

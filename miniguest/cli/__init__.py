"""`miniguest`: the command line. One module per command family (main: boot, samples, store; debug;
regress)."""

"""Integration tests: a real forkhorn master on 127.0.0.1:0 and independent clients."""

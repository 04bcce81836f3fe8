"""Plain torch modules: no training code, no I/O."""

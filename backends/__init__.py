"""Everything that differs between Keras backends, behind one small interface."""

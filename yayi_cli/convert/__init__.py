"""`yayi merge`, `yayi quantize` and `yayi export`: a model turned into another form of itself."""

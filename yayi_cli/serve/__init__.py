"""`yayi serve` and `yayi template install`: a model made ready for other engines, and served."""

"""`yayi data validate`, `split` and `preview`: instruction data checked, split and shown."""

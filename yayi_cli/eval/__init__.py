"""`yayi eval`: loss and generation metrics, multiple choice suites, preference scoring, gates."""

"""`yayi web`: a chat page in the browser on top of an OpenAI-compatible server."""

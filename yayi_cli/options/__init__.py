"""How a command's options are declared once (fields, --config files) and the ones several commands share."""

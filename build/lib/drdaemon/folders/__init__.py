"""The folder lifecycle: watching the inbox, claiming frames into work/, and committing results."""

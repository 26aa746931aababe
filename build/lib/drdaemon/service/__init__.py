"""Service code: the daemon's threads, the pipes between its stages, one frame's steps, its metrics."""

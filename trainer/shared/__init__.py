"""What every training scheme shares: configuration, data, the run loop, checkpoints, export, schedule, devices."""

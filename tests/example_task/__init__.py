"""A task type that exists only to show that adding one takes its module and the registry."""

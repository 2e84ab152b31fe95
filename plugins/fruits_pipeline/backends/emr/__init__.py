"""EMR: the cluster spec and steps (`config`), the step sensor, the nodes' bootstrap."""

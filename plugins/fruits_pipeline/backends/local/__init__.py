"""This machine: the Spark standalone cluster (`cluster`), its step runner, the operators."""

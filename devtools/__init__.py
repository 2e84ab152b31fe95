"""Developer tooling: `make demo`, `make refit`, `make airflow` and the synthetic samples."""

"""A running Airflow 3 on this machine, with the project's DAG, the local backend and a local lake.

`make airflow` / `make airflow-stop`, and the tests that operate Airflow as its users do, use it:

    python -m devtools.stack start [--home .airflow] [--lake .lake] [--port 8080]
    python -m devtools.stack stop [--home .airflow]
    python -m devtools.stack airflow [--home .airflow] backfill create ...

`start` starts the home's PostgreSQL (`postgres`: Debian's PostgreSQL 15, its cluster in
`<home>/postgres/`, on a free port of 127.0.0.1), migrates the metadata database, then starts
the four components that `airflow standalone` runs (api-server, scheduler, dag-processor,
triggerer) as one process group, each logging to `<home>/logs/<component>.log`, writes
`<home>/env` and waits until they are healthy and the DAG is parsed. Everything binds
127.0.0.1: the API server and PostgreSQL listen there and the log-serving side processes (which
would bind 0.0.0.0) are not started; the API server reads the task logs from `<home>/logs`
directly.

Login: SimpleAuthManager, user `admin` (role admin) with a password generated on the first
start and kept in `<home>/simple_auth_manager_passwords.json` (mode 600, under the git-ignored
home); the database password likewise in `<home>/postgres-login`: no secret lives in the
repository. The Spark clusters of the local backend keep their state under `<home>/clusters`
(`StackConfig.state_dir` to change it). The DAG starts paused.

The CLI: `source <home>/env` (mode 600: the stack's environment, database URL included), then
the plain `airflow ...` acts on the stack while it runs (`devtools.stack airflow ...` does the
same). Its components and CLI load `config/airflow_local_settings.py`: a backfill
created without `--max-active-runs` gets its DAG's `max_active_runs` (FRUITS_MAX_ACTIVE_RUNS),
not Airflow's 10.

`stop` sends SIGTERM to the process group recorded in `<home>/airflow-stack.json`, terminates
the local clusters still alive under the state directory, then stops whatever process is still
marked with this home (FRUITS_AIRFLOW_STACK=<home> in its environment: everything the stack
started, Spark clusters included), stops PostgreSQL last, and fails if one survives.

The modules, by job: `config` (what a stack runs with: its environment, its home's files),
`components` (start and stop), `client` (the REST API and the health of the components),
`postgres` (the database server), `cli` (the command line).
"""

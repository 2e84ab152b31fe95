"""A running Airflow 3 on this machine, with the project's DAG, the local backend and a local lake.

`make airflow` / `make airflow-stop`, and the tests that operate Airflow as its users do, use it:

    python -m devtools.stack start [--home .airflow] [--lake .lake] [--port 8080]
    python -m devtools.stack stop [--home .airflow]
    python -m devtools.stack airflow [--home .airflow] backfill create ...

`start` migrates the SQLite metadata database of AIRFLOW_HOME, then starts the four components
that `airflow standalone` runs (api-server, scheduler, dag-processor, triggerer) as one process
group, each logging to `<home>/logs/<component>.log`, and waits until they are healthy and the
DAG is parsed. The LocalExecutor runs on SQLite here (Airflow 3 allows it; one writer at a
time, fine for a few runs). Everything binds 127.0.0.1: the API server listens there and the
log-serving side processes (which would bind 0.0.0.0) are not started; the API server reads the
task logs from `<home>/logs` directly.

Login: SimpleAuthManager, user `admin` (role admin) with a password generated on the first
start and kept in `<home>/simple_auth_manager_passwords.json` (mode 600, under the git-ignored
home): no secret lives in the repository. The Spark clusters of the local backend keep their
state under `<home>/clusters` (`StackConfig.state_dir` to change it). The DAG starts paused.

SQLite: run the `airflow` CLI on the stack through `devtools.stack airflow ...` (`airflow_cli`):
plain `airflow backfill create` fails now and then with "database is locked" while the
scheduler writes, and the partial backfill Airflow then deletes can crash the scheduler. A
backfill created that way without `--max-active-runs` gets FRUITS_MAX_ACTIVE_RUNS, not
Airflow's 10.

`stop` sends SIGTERM to the process group recorded in `<home>/airflow-stack.json`, terminates
the local clusters still alive under the state directory, then stops whatever process is still
marked with this home (FRUITS_AIRFLOW_STACK=<home> in its environment: everything the stack
started, Spark clusters included), and fails if one survives.

The modules, by job: `config` (what a stack runs with: its environment, its home's files),
`components` (start and stop), `client` (the REST API and the health of the components),
`cli` (the command line, and the `airflow` CLI run safely on a stack).
"""

"""Static checks of the docker-compose stack (docker-compose.yaml, Dockerfile, .env.example).

No Docker engine here: the stack is never started by the tests. `docker compose config` checks
the file too when the compose plugin is installed (it needs no engine), else that test skips.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from fruits_pipeline.lake import Lake

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
SPARK_DEFAULTS = REPO / "docker" / "spark-defaults.conf"

EXPECTED_SERVICES = {
    "postgres",
    "minio",
    "minio-init",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
# ${VAR}, ${VAR:-default}, ${VAR:?error} and $VAR; `$$` is compose's escape for a literal `$`.
_INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CONN|_KEY$")
_PLACEHOLDER = "change-me"
# What real credentials look like: AWS key ids, long hex or base64 runs.
_REAL_LOOKING = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    re.compile(r"[A-Za-z0-9+/]{30,}={0,2}"),
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (comments, blank lines, quoted values)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path}:{number}: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def one_shot_services(services: dict[str, dict]) -> set[str]:
    """Services others wait for to complete: the init jobs."""
    return {
        name
        for service in services.values()
        for name, dependency in _depends_on(service).items()
        if dependency.get("condition") == "service_completed_successfully"
    }


def _depends_on(service: dict) -> dict[str, dict]:
    depends_on = service.get("depends_on", {})
    assert isinstance(depends_on, dict), "depends_on must be a mapping with conditions"
    return depends_on


def _volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(kind, source, target) of each volume entry; kind is "bind" or "volume"."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target, kind = entry.get("source", ""), entry["target"], entry["type"]
        mounts.append((kind, source, target))
    return mounts


def _interpolated(text: str) -> set[str]:
    return {braced or bare for braced, bare in _INTERPOLATION.findall(text)}


def test_expected_services_are_defined(services):
    assert set(services) >= EXPECTED_SERVICES, EXPECTED_SERVICES - set(services)
    assert one_shot_services(services) == {"airflow-init", "minio-init"}


def test_every_long_running_service_has_a_healthcheck(services):
    one_shots = one_shot_services(services)
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", f"{name} is a one-shot job: restart 'no'"
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert service.get("restart") in ("always", "unless-stopped"), name


def test_dependencies_wait_for_health_or_completion(services):
    one_shots = one_shot_services(services)
    for name, service in services.items():
        for dependency, spec in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = (
                "service_completed_successfully" if dependency in one_shots else "service_healthy"
            )
            assert spec.get("condition") == expected, f"{name} -> {dependency}: {spec}"
    # What each Airflow component needs before it starts.
    for name in EXPECTED_SERVICES - {"postgres", "minio", "minio-init"}:
        assert "postgres" in _depends_on(services[name]), name
    assert {"airflow-init", "minio-init", "airflow-apiserver"} <= set(
        _depends_on(services["airflow-scheduler"])
    )
    assert "minio" in _depends_on(services["minio-init"])


def test_published_ports_are_bound_to_loopback(services):
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port!r}"
            published.append(port)
    assert "127.0.0.1:8080:8080" in published
    assert {"127.0.0.1:9000:9000", "127.0.0.1:9001:9001"} <= set(published)


def test_files_the_stack_uses_exist_in_the_repository(compose, services):
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = REPO / build.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str | dict) else env_files:
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            if PurePosixPath(path).name != ".env":
                assert (REPO / path).is_file(), f"{name}: env_file {path}"
        targets = {}
        for kind, source, target in _volume_mounts(service):
            if kind == "bind":
                outside = source.startswith(("/", "~")) or ".." in PurePosixPath(source).parts
                assert not outside, f"{name}: {source} is outside the repository"
                assert (REPO / source).exists(), f"{name}: bind source {source} does not exist"
                assert PurePosixPath(source).name != ".env", f"{name} mounts .env"
                targets[target] = source
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        # A script the container runs comes from a bind mount of this repository.
        entrypoint = service.get("entrypoint") or []
        for argument in [entrypoint] if isinstance(entrypoint, str) else entrypoint:
            if argument.endswith((".sh", ".py")):
                assert argument in targets, f"{name}: {argument} is not mounted from the repo"


def test_the_repository_root_and_dotenv_stay_out_of_images_and_containers(services):
    for name, service in services.items():
        for kind, source, _ in _volume_mounts(service):
            if kind == "bind":
                assert source.rstrip("/") not in (".", "./", ""), f"{name} mounts the repo root"
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore must exclude everything but what the image needs"
    assert not any(line.startswith("!") and ".env" in line for line in lines)


def test_dotenv_is_ignored_and_its_example_exists():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored or "/.env" in ignored, ".env must be listed in .gitignore"
    assert ENV_EXAMPLE.is_file()


def test_env_example_defines_every_interpolated_variable(env_example):
    used = _interpolated(COMPOSE_FILE.read_text())
    assert used, "docker-compose.yaml interpolates no variable: parsing broke?"
    missing = used - set(env_example)
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_holds_placeholders_only(env_example):
    for key, value in env_example.items():
        if _SECRET_NAME.search(key) and key != "AIRFLOW_CONN_AWS_DEFAULT":
            assert value == "" or _PLACEHOLDER in value, f"{key} must be empty or a change-me"
        for pattern in _REAL_LOOKING:
            assert not pattern.search(value), f"{key} looks like a real secret"
    connection = json.loads(env_example["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["conn_type"] == "aws"
    assert connection["extra"]["endpoint_url"] == "http://minio:9000"
    # boto3 (the tasks) and S3A (Spark) must use the same MinIO user.
    assert connection["login"] == env_example["AWS_ACCESS_KEY_ID"]
    assert connection["password"] == env_example["AWS_SECRET_ACCESS_KEY"]
    assert _PLACEHOLDER in connection["password"]


def test_compose_file_carries_no_literal_secret(services):
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            if _SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert _interpolated(str(value)), f"{name}: {key} must come from .env"


def test_the_local_backend_uses_the_minio_lake(services):
    environment = services["airflow-scheduler"]["environment"]
    assert environment["FRUITS_BACKEND"] == "local"
    lake = Lake(environment["FRUITS_LAKE_ROOT"])
    assert lake.root.startswith("s3a://")
    # minio-init creates that bucket and the pipeline's policy grants exactly it.
    init_script = (REPO / "docker" / "minio-init.sh").read_text()
    assert f"bucket={lake.bucket}" in init_script
    policy = json.loads((REPO / "docker" / "minio-lake-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{lake.bucket}", f"arn:aws:s3:::{lake.bucket}/*"}
    # Spark's S3A settings come from SPARK_CONF_DIR, mounted where the image points it.
    mounts = {target: source for _, source, target in _volume_mounts(services["airflow-scheduler"])}
    assert mounts["/opt/airflow/spark-conf/spark-defaults.conf"] == "./docker/spark-defaults.conf"
    assert "AWS_ACCESS_KEY_ID" in environment and "AIRFLOW_CONN_AWS_DEFAULT" in environment


def test_the_triggerer_sees_the_waits_settings_of_the_scheduler_and_dag_processor(services):
    """The deferrable choice (and every FRUITS_* setting) is one environment for the services
    that parse the DAG, run its tasks or run its triggers."""
    from fruits_pipeline.settings import PipelineSettings

    def fruits_settings(name: str) -> dict[str, str]:
        environment = services[name]["environment"]
        return {key: str(value) for key, value in environment.items() if key.startswith("FRUITS_")}

    triggerer = fruits_settings("airflow-triggerer")
    assert triggerer["FRUITS_DEFERRABLE_WAITS"] == "true"
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        assert fruits_settings(name) == triggerer, name
    assert services["airflow-triggerer"]["command"] == "triggerer"
    # The triggerer imports the trigger classes from plugins/, as the other services do.
    assert any(target == "/opt/airflow/project/plugins"
               for _, _, target in _volume_mounts(services["airflow-triggerer"]))  # fmt: skip
    settings = PipelineSettings.from_env({"FRUITS_DEFERRABLE_WAITS": "true"})
    assert settings.deferrable_waits is True


def test_spark_defaults_point_s3a_at_minio_without_keys():
    settings = {}
    for line in SPARK_DEFAULTS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split(None, 1)
            settings[key] = value.strip()
    assert settings["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert settings["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert (
        "EnvironmentVariableCredentialsProvider"
        in settings["spark.hadoop.fs.s3a.aws.credentials.provider"]
    )
    assert not any("access.key" in key or "secret.key" in key for key in settings)


def test_dockerfile_installs_java_17_and_the_pinned_requirements(dockerfile):
    airflow_pin = re.search(
        r"^apache-airflow==(\S+)", (REPO / "requirements.txt").read_text(), re.M
    )
    assert airflow_pin
    assert re.search(
        rf"^FROM apache/airflow:{re.escape(airflow_pin.group(1))}-python3\.11\s*$", dockerfile, re.M
    )
    assert "openjdk-17-jre-headless" in dockerfile
    # Instructions with their continuation lines joined.
    instructions = re.sub(r"\\\n\s*", " ", dockerfile).splitlines()
    pip = [line for line in instructions if line.startswith("RUN pip install")]
    assert len(pip) == 1, pip
    assert re.search(r" -r \S*/requirements\.txt\b", pip[0]), pip[0]
    assert re.search(r" -c \S*/constraints\.txt\b", pip[0]), pip[0]
    assert re.search(r"^COPY .*requirements\.txt constraints\.txt", dockerfile, re.M)
    pythonpath = re.search(r"PYTHONPATH=(\S+)", dockerfile)
    assert pythonpath
    assert set(pythonpath.group(1).split(":")) >= {
        "/opt/airflow/project",
        "/opt/airflow/project/plugins",
        "/opt/airflow/project/config",  # Airflow's local settings: the backfill limit
    }
    assert "SPARK_CONF_DIR=/opt/airflow/spark-conf" in dockerfile


def _dockerfile_arg(dockerfile: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)\s*$", dockerfile, re.M)
    assert match, f"ARG {name} missing from the Dockerfile"
    return match.group(1)


def test_hadoop_aws_matches_the_hadoop_of_pyspark(dockerfile):
    spec = importlib.util.find_spec("pyspark")
    assert spec and spec.submodule_search_locations, "pyspark is a runtime requirement"
    jars = Path(next(iter(spec.submodule_search_locations))) / "jars"
    client_jars = sorted(jars.glob("hadoop-client-api-*.jar"))
    assert len(client_jars) == 1, client_jars
    hadoop_version = client_jars[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert _dockerfile_arg(dockerfile, "HADOOP_AWS_VERSION") == hadoop_version
    for name in ("HADOOP_AWS", "AWS_SDK_BUNDLE", "ANALYTICS_ACCELERATOR"):
        version = _dockerfile_arg(dockerfile, f"{name}_VERSION")
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: pin an exact version"
        assert re.fullmatch(r"[0-9a-f]{40}", _dockerfile_arg(dockerfile, f"{name}_SHA1"))
    # The SDK v2 line of Hadoop 3.4 and later (the v1 aws-java-sdk-bundle would not load).
    assert _dockerfile_arg(dockerfile, "AWS_SDK_BUNDLE_VERSION").startswith("2.")
    assert "software/amazon/awssdk/bundle/" in dockerfile
    assert "org/apache/hadoop/hadoop-aws/" in dockerfile


def _compose_v2() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    return [docker, "compose"] if probe.returncode == 0 else None


def test_docker_compose_config_accepts_the_file(tmp_path):
    command = _compose_v2()
    if command is None:
        pytest.skip("the docker compose plugin is not installed: static checks only")
    env_file = tmp_path / "env"
    shutil.copy(ENV_EXAMPLE, env_file)
    result = subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr

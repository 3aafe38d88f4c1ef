"""The deployment files against the code they deploy.

Docker and Kubernetes cannot run here, so the Dockerfile, docker-compose.yml and
deploy/kubernetes/ are parsed and checked: every command is a real ``taskledger``
command with real options (parsed by the CLI's own click command), every variable is a
setting the service reads, ports and probe paths are the app's (or the projector's
metrics server's), the image's user is not root, the manifests match Kubernetes'
schemas, and the image's lock pins every dependency within pyproject.toml's bounds.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
import uvicorn.config
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from api import cli
from api.app import create_app
from api.metrics import PROJECTOR_PATHS
from api.settings import Settings

# This file's checkout (not tests.support.ROOT): a copy of the tree, with one file
# broken, shows that each check fails.
ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# Kubernetes releases the manifests must suit: an older one still supported by
# managed clusters, and the newest whose schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

SETTINGS = {name.upper() for name in Settings.model_fields}
# Read by what runs the service rather than by Settings: each with its reader.
READ_BY_UVICORN = {"FORWARDED_ALLOW_IPS"}
READ_BY_PYTHON = {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
SHUTDOWN_SECONDS = Settings.model_fields["shutdown_timeout_seconds"].default
# In a container the service must listen on every interface, not on loopback.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


# The CLI ---------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    command: str  # "serve", "projections rebuild"
    params: dict[str, Any]


def invocation(argv: Sequence[str]) -> Invocation:
    """``argv`` parsed as the taskledger CLI parses it (nothing run): an unknown
    command or option, or a bad value, fails the test. (Typer's click, which newer
    releases carry inside as a private copy, is reached through the command itself.)"""
    assert argv and argv[0] == "taskledger", f"{argv}: not a taskledger command"
    command: Any = typer.main.get_command(cli.app)
    names, args = [], list(argv[1:])
    while hasattr(command, "list_commands"):  # a group of commands
        assert args, f"{argv}: names a group, no command"
        context = command.context_class(command)
        sub = command.get_command(context, args[0])
        assert sub is not None, (
            f"{argv}: no command {args[0]!r} (there are {command.list_commands(context)})"
        )
        names.append(args.pop(0))
        command = sub
    try:
        context = command.make_context(" ".join(names), args)
    except Exception as error:
        if not hasattr(error, "format_message"):  # not a usage error
            raise
        pytest.fail(f"{list(argv)}: {error.format_message()}")
    return Invocation(" ".join(names), dict(context.params))


@pytest.fixture(scope="module")
def get_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The paths the app answers GET on (the app is built, not started)."""
    settings = Settings(_env_file=None, database_url=None, data_dir=tmp_path_factory.mktemp("data"))
    return {
        getattr(route, "path", "")
        for route in create_app(settings).routes
        if "GET" in getattr(route, "methods", set())
    }


def test_uvicorn_reads_the_variables_said_to_be_its() -> None:
    source = inspect.getsource(uvicorn.config)
    for name in READ_BY_UVICORN:
        assert f'"{name}"' in source


def url_in(argv: Sequence[str]) -> tuple[int, str]:
    """The port and path of the one local URL that a probe command asks."""
    found = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(argv))
    assert len(found) == 1, f"{argv}: no local URL, or several"
    return int(found[0][0]), found[0][1]


# The Dockerfile --------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """The global ARGs and each stage's instructions, continuation lines joined and
    comments dropped (as Docker reads them)."""
    logical, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.value.partition("=")
            global_args[name] = default
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda match: variables.get(match[1] or match[2], match[0]),
        value,
    )


@dataclass(frozen=True)
class Stage:
    image: str
    name: str
    instructions: list[Instruction]
    variables: dict[str, str]  # ARG defaults and ENV values, as the stage ends

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        values = self.all(keyword)
        assert len(values) == 1, f"{len(values)} {keyword} instructions in stage {self.name}"
        return expand(values[0], self.variables)


def stages() -> list[Stage]:
    global_args, parsed = dockerfile_stages()
    result = []
    for instructions in parsed:
        image, _, name = expand(instructions[0].value, global_args).partition(" AS ")
        variables: dict[str, str] = {}
        for instruction in instructions[1:]:
            if instruction.keyword == "ARG":
                key, _, default = instruction.value.partition("=")
                variables[key] = default
            elif instruction.keyword == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", instruction.value):
                    variables[key] = expand(value, variables)
        result.append(Stage(image.strip(), name.strip(), instructions, variables))
    return result


def runtime() -> Stage:
    return stages()[-1]


def exec_form(value: str) -> list[str]:
    """A CMD in exec (JSON) form: shell form would make /bin/sh PID 1, and SIGTERM
    would not reach the service."""
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), value
    return argv


def image_uid() -> int:
    user = runtime().one("USER")
    uid = user.partition(":")[0]
    assert uid.isdigit(), f"USER {user}: Kubernetes' runAsNonRoot needs a numeric uid"
    return int(uid)


def test_the_image_is_built_in_stages_and_runs_on_slim_python() -> None:
    built = stages()
    assert len(built) >= 2
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", built[-1].image), built[-1].image
    # The runtime stage takes nothing from the build context: only the wheels.
    assert not [copy for copy in built[-1].all("COPY") if not copy.startswith("--from=")], (
        "the runtime stage copies from the build context"
    )
    mounts = " ".join(built[-1].all("RUN"))
    assert f"from={built[0].name}" in mounts or f"--from={built[0].name}" in " ".join(
        built[-1].all("COPY")
    ), "the runtime stage does not take the wheels stage's wheels"


def test_the_image_runs_as_a_fixed_user_who_is_not_root() -> None:
    uid = image_uid()
    assert uid != 0
    made = " ".join(expand(run, runtime().variables) for run in runtime().all("RUN"))
    assert re.search(rf"useradd [^&]*--uid {uid}\b", made), f"no user made with uid {uid}"


def test_the_image_serves_by_default_on_its_exposed_port() -> None:
    serve = invocation(exec_form(runtime().one("CMD")))
    assert serve.command == "serve"
    assert serve.params["host"] == ALL_INTERFACES
    assert runtime().one("EXPOSE") == str(serve.params["port"])


def test_the_image_health_check_asks_healthz_of_the_served_port(get_routes: set[str]) -> None:
    check = runtime().one("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    argv = exec_form(command)
    assert argv[0] == "python", "the slim image has no curl"
    port, path = url_in(argv)
    assert path == "/healthz" and path in get_routes
    assert port == invocation(exec_form(runtime().one("CMD"))).params["port"]
    assert "--timeout=" in options


def test_the_image_sets_only_variables_that_something_reads() -> None:
    names = set()
    for env in runtime().all("ENV"):
        names |= set(re.findall(r"(\w+)=", env))
    assert names <= SETTINGS | READ_BY_PYTHON, names - SETTINGS - READ_BY_PYTHON
    assert runtime().variables["APP_ENV"] == "production"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> str:
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            parts.append(pattern[i : end + 1])
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return "".join(parts)


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern that
    matches it, or a folder above it, decides."""
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    left_out = False
    for pattern in dockerignore_patterns():
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            left_out = not pattern.startswith("!")
    return left_out


def test_the_build_context_holds_what_the_image_copies_and_no_secret() -> None:
    for copy in (c for stage in stages() for c in stage.all("COPY")):
        if copy.startswith("--from="):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source), f"COPY {source}: left out by .dockerignore"
            for file in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
                if "__pycache__" not in file.parts:
                    relative = file.relative_to(ROOT).as_posix()
                    assert not ignored(relative), f"{relative}: left out by .dockerignore"
    for private in (".env", ".git/config", ".venv/bin/python", "data/events.sqlite3", "tests"):
        assert ignored(private), f"{private} would be sent to the Docker daemon"
    assert ignored("api/__pycache__/app.cpython-311.pyc")


def locked(lock: str = "requirements.lock") -> dict[str, tuple[str, int]]:
    """A lock's packages: each one's pinned version and how many hashes it has."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (ROOT / lock).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for line in project["dependencies"]:
        wanted = Requirement(line)
        name = canonicalize_name(wanted.name)
        assert name in pins, f"{wanted.name} is not in requirements.lock: regenerate it"
        version, _ = pins[name]
        assert wanted.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {wanted.name}=={version}, outside {wanted.specifier}"
        )
    assert all(hashes for _, hashes in pins.values()), "a pin without its hashes"
    # The image's lock is the service's alone: no test tool ships in it.
    for line in project["optional-dependencies"]["test"]:
        tool = canonicalize_name(Requirement(line).name)
        if tool not in {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}:
            assert tool not in pins or tool == "pyyaml", f"{tool} (a test tool) is locked"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile


def pip_commands(stage: Stage) -> list[list[str]]:
    """The arguments of each ``pip`` command that the stage's RUN instructions run."""
    commands = []
    for run in stage.all("RUN"):
        for command in " ".join(shlex.split(expand(run, stage.variables))).split(" && "):
            words = command.split()
            if words[:1] == ["pip"]:
                commands.append(words[1:])
    return commands


def pip_command(commands: list[list[str]], action: str, target: str) -> int:
    """Which of the commands is the one ``pip action`` of ``target`` (a lock, or .)."""
    found = [i for i, args in enumerate(commands) if args[:1] == [action] and target in args]
    assert len(found) == 1, f"not one pip {action} of {target} in the wheels stage: {commands}"
    return found[0]


def test_the_image_wheel_is_built_by_the_locked_backend_and_nothing_unpinned() -> None:
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    backend = locked("build-requirements.lock")
    for line in system["requires"]:
        wanted = Requirement(line)
        name = canonicalize_name(wanted.name)
        assert name in backend, f"{wanted.name} (the build backend) is not locked"
        version, hashes = backend[name]
        assert wanted.specifier.contains(version) and hashes, f"{name}=={version} ({hashes})"
    wheels = stages()[0]
    assert "build-requirements.lock" in " ".join(wheels.all("COPY"))
    commands = pip_commands(wheels)
    for args in commands:
        # Whatever comes from the index is checked against a lock's hashes.
        assert "--no-index" in args or {"--require-hashes", "-r"} <= set(args), args
    dependencies = commands[pip_command(commands, "wheel", "requirements.lock")]
    # A dependency's sdist would be built by a backend fetched unpinned: wheels only.
    assert "--only-binary :all:" in " ".join(dependencies), dependencies
    installed = pip_command(commands, "install", "build-requirements.lock")
    built = pip_command(commands, "wheel", ".")
    assert installed < built, "the backend is installed after the wheel is built"
    # Build isolation would fetch the backend again, from the index, unpinned.
    assert {"--no-build-isolation", "--no-index", "--no-deps"} <= set(commands[built])


# docker-compose.yml ----------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    assert name in services, f"docker-compose.yml has no {name} service"
    found: dict[str, Any] = services[name]
    return found


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(amount) * units[unit] for amount, unit in re.findall(r"(\d+)(ms|s|m|h)", duration)
    )


def healthy_postgres(name: str) -> None:
    condition = service(name)["depends_on"]["postgres"]["condition"]
    assert condition == "service_healthy", f"{name} starts before postgres is ready"


def test_compose_postgres_is_official_with_a_volume_and_a_health_check() -> None:
    postgres = service("postgres")
    assert re.fullmatch(r"postgres:\d+[\w.-]*", postgres["image"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    volume, _, target = postgres["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in compose()["volumes"]


def test_compose_api_serves_without_a_projector_and_is_healthy_when_ready(
    get_routes: set[str],
) -> None:
    api = service("api")
    serve = invocation(api["command"])
    assert serve.command == "serve" and serve.params["no_projector"] is True
    assert serve.params["host"] == ALL_INTERFACES
    published = [port.rsplit(":", 1) for port in api["ports"]]
    assert [int(container) for _, container in published] == [serve.params["port"]]
    port, path = url_in(api["healthcheck"]["test"])
    assert path == "/readyz" and path in get_routes and port == serve.params["port"]
    healthy_postgres("api")
    assert ".env" in api["env_file"] or api["env_file"] == ".env"


def test_compose_api_scales_without_a_host_port_conflict() -> None:
    api = service("api")
    host = api["ports"][0].rsplit(":", 1)[0]
    # "${API_PORTS:-8000-8009}": the default range, one port per replica.
    first, last = map(int, re.findall(r"(\d+)-(\d+)", host)[-1])
    assert last - first + 1 >= max(api["deploy"]["replicas"], 3), host  # --scale api=3


def test_compose_projectors_are_one_active_and_one_standby() -> None:
    projector = service("projector")
    assert invocation(projector["command"]).command == "project"
    assert projector["deploy"]["replicas"] == 2
    healthy_postgres("projector")


def test_compose_projectors_serve_their_metrics_and_are_healthy_while_alive() -> None:
    projector = service("projector")
    project = invocation(projector["command"])
    assert project.params["metrics_host"] == ALL_INTERFACES
    port = project.params["metrics_port"]
    assert port is not None, "the projectors serve no metrics"
    # On the compose network, not on the host: two replicas would need two host ports.
    assert [int(exposed) for exposed in projector["expose"]] == [port]
    assert "ports" not in projector
    checked, path = url_in(projector["healthcheck"]["test"])
    assert path == "/healthz" and path in PROJECTOR_PATHS and checked == port


def test_compose_projectors_never_fall_back_to_the_api_database() -> None:
    # On Neon DATABASE_URL is the pooled endpoint, through which LISTEN hears nothing.
    url = service("projector")["environment"]["DATABASE_URL"]
    assert interpolated(url) == {"PROJECTOR_DATABASE_URL"}, url


def test_compose_stops_slower_than_the_service_drains() -> None:
    for name in ("api", "projector"):
        assert seconds(service(name)["stop_grace_period"]) > SHUTDOWN_SECONDS


def interpolated(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", text))


def documented_in_env_example() -> set[str]:
    """Every variable .env.example sets or shows (``# NAME=value``)."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_compose_variables_are_settings_or_documented_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose_only = interpolated(text) - SETTINGS
    assert compose_only <= documented_in_env_example(), compose_only
    for name in ("api", "projector"):
        names = set(service(name)["environment"])
        assert names <= SETTINGS | READ_BY_UVICORN, names - SETTINGS
    stray = documented_in_env_example() - SETTINGS - compose_only
    assert not stray, f".env.example names what nothing reads: {stray}"


def test_compose_defaults_to_its_own_postgres() -> None:
    postgres = service("postgres")["environment"]
    for name in ("api", "projector"):
        for url in re.findall(
            r"postgresql://[^}\s]+", service(name)["environment"]["DATABASE_URL"]
        ):
            parts = urlsplit(url)
            assert parts.hostname == "postgres", url
            assert parts.username == postgres["POSTGRES_USER"]
            assert parts.password == postgres["POSTGRES_PASSWORD"]
            assert parts.path == "/" + postgres["POSTGRES_DB"]


def compose_commands() -> list[list[str]]:
    """The README's ``docker compose up`` commands (inline or in a block), as words."""
    readme = (ROOT / "README.md").read_text()
    return [shlex.split(line) for line in re.findall(r"docker compose up[^`\n#]*", readme)]


def test_the_readme_names_the_compose_postgres_and_scales_on_neon_without_it() -> None:
    readme = (ROOT / "README.md").read_text()
    major = re.fullmatch(r"postgres:(\d+)[\w.-]*", service("postgres")["image"])
    assert major is not None
    said = re.search(r"\*\*Docker Compose\*\*[^:]*: PostgreSQL (\d+)", readme)
    named = said[1] if said else None
    assert named == major[1], f"the README's compose runs PostgreSQL {named}; it is {major[0]}"
    for words in compose_commands():
        if "--no-deps" in words:
            # Without services named, `up` starts every one, the local database too.
            services = [
                word
                for i, word in enumerate(words[3:], 3)
                if not word.startswith("-") and words[i - 1] != "--scale"
            ]
            assert services and "postgres" not in services, words
            assert set(services) <= set(compose()["services"]), words
    # On Neon (no local database), scaling needs --no-deps too.
    assert any({"--no-deps", "--scale"} <= set(words) for words in compose_commands())


# deploy/kubernetes -----------------------------------------------------------


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    yield path.name, document


def the(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        document
        for _, document in manifests()
        if document["kind"] == kind
        and component in (None, document["metadata"]["labels"].get("app.kubernetes.io/component"))
    ]
    assert len(found) == 1, f"{len(found)} {kind} manifests for {component}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, document in manifests():
        if document["kind"] in ("Deployment", "Job"):
            yield document["kind"], document["spec"]["template"]["spec"]


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, document in manifests():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} ({document['kind']}), Kubernetes {version}: {error.message}")
        checked += 1
    assert checked >= 8


def test_kustomization_lists_every_manifest_but_the_rebuild_job() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"rebuild-job.yaml"}
    images = {image["name"] for image in kustomization["images"]}
    for _, spec in pod_specs():
        for container in spec["containers"]:
            assert container["image"].partition(":")[0] in images, container["image"]


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    named = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    resolved: int = named[port] if isinstance(port, str) else port
    return resolved


def test_the_api_deployment_serves_without_a_projector_and_is_probed(
    get_routes: set[str],
) -> None:
    container = only_container(the("Deployment", "api"))
    serve = invocation(container["command"])
    assert serve.command == "serve" and serve.params["no_projector"] is True
    assert serve.params["host"] == ALL_INTERFACES
    assert [port["containerPort"] for port in container["ports"]] == [serve.params["port"]]
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"]["path"] == path and path in get_routes
        assert probe_port(container, container[probe]) == serve.params["port"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound


def test_the_service_and_budget_select_the_api_pods() -> None:
    api, projector = the("Deployment", "api"), the("Deployment", "projector")
    service = the("Service", "api")
    assert selects(service["spec"]["selector"], api)
    assert not selects(service["spec"]["selector"], projector)
    named = {port["name"] for port in only_container(api)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= named
    assert selects(the("PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"], api)


def test_projectors_are_one_active_and_one_standby() -> None:
    projector = the("Deployment", "projector")
    assert projector["spec"]["replicas"] == 2
    assert invocation(only_container(projector)["command"]).command == "project"
    budget = the("PodDisruptionBudget", "projector")
    assert selects(budget["spec"]["selector"]["matchLabels"], projector)
    assert budget["spec"]["minAvailable"] == 1


def scraped(workload: dict[str, Any]) -> tuple[int, str]:
    """The port and path Prometheus' pod discovery scrapes, from the pods' annotations."""
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    return int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"]


def test_projector_pods_serve_their_metrics_and_are_probed() -> None:
    projector = the("Deployment", "projector")
    container = only_container(projector)
    project = invocation(container["command"])
    assert project.params["metrics_host"] == ALL_INTERFACES
    port = project.params["metrics_port"]
    assert port is not None, "the projector pods serve no metrics"
    assert [entry["containerPort"] for entry in container["ports"]] == [port]
    assert scraped(projector) == (port, "/metrics") and "/metrics" in PROJECTOR_PATHS
    for probe in ("startupProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path == "/healthz" and path in PROJECTOR_PATHS
        assert probe_port(container, container[probe]) == port
    # Readiness would say nothing: no Service sends a projector requests.
    assert "readinessProbe" not in container


def test_api_pods_are_scraped_where_they_serve_metrics(get_routes: set[str]) -> None:
    api = the("Deployment", "api")
    port, path = scraped(api)
    assert port == invocation(only_container(api)["command"]).params["port"]
    assert path == "/metrics" and path in get_routes


def test_the_rebuild_job_rebuilds_without_asking() -> None:
    job = the("Job", "rebuild")
    rebuild = invocation(only_container(job)["command"])
    assert rebuild.command == "projections rebuild" and rebuild.params["yes"] is True
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_pod_runs_as_the_image_user_on_a_read_only_root() -> None:
    uid = image_uid()
    kinds = []
    for kind, spec in pod_specs():
        kinds.append(kind)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {mount["name"] for mount in container.get("volumeMounts", [])} <= volumes
    assert sorted(kinds) == ["Deployment", "Deployment", "Job"]


def secret_values() -> dict[str, str]:
    secret = the("Secret")
    values: dict[str, str] = secret.get("stringData", {})
    return values


def test_every_variable_is_a_setting_and_every_reference_resolves() -> None:
    config, secret = the("ConfigMap"), the("Secret")
    assert set(config["data"]) <= SETTINGS | READ_BY_UVICORN, set(config["data"]) - SETTINGS
    for _, spec in pod_specs():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config["metadata"]["name"]
            for variable in container.get("env", []):
                assert variable["name"] in SETTINGS | READ_BY_UVICORN, variable["name"]
                reference = variable["valueFrom"]["secretKeyRef"]
                assert reference["name"] == secret["metadata"]["name"]
                assert reference["key"] in secret_values(), reference["key"]


def test_the_configmap_values_are_ones_the_service_accepts() -> None:
    values = {
        key.lower(): value for key, value in the("ConfigMap")["data"].items() if key in SETTINGS
    }
    settings = Settings(_env_file=None, **values)
    assert settings.app_env == "production"


def database_url_of(workload: dict[str, Any]) -> str:
    for variable in only_container(workload)["env"]:
        if variable["name"] == "DATABASE_URL":
            return secret_values()[variable["valueFrom"]["secretKeyRef"]["key"]]
    raise AssertionError("no DATABASE_URL")


def test_projectors_and_the_rebuild_use_a_direct_connection() -> None:
    # LISTEN and session advisory locks do not pass PgBouncer's transaction mode.
    for workload in (the("Deployment", "projector"), the("Job", "rebuild")):
        url = urlsplit(database_url_of(workload))
        assert "-pooler" not in (url.hostname or ""), url.hostname
        assert "sslmode=require" in url.query and "channel_binding=require" in url.query


def test_pods_are_given_longer_to_stop_than_the_service_drains() -> None:
    configured = the("ConfigMap")["data"].get("SHUTDOWN_TIMEOUT_SECONDS", SHUTDOWN_SECONDS)
    for kind, spec in pod_specs():
        if kind == "Deployment":
            pause = 0
            for container in spec["containers"]:
                command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
                pause += int(command.get("command", ["sleep", "0"])[-1])
            assert spec["terminationGracePeriodSeconds"] > int(configured) + pause

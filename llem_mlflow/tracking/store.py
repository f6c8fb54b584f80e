"""Open the MLflow tracking store: every command that talks to MLflow starts here.

- An http(s) tracking server is asked one cheap question first, with a short timeout, so that
  a wrong URI, a server that is down or a missing login fails in seconds with the reason and
  the fix (MLflow itself would retry for minutes and then say only "failed").
- A sqlite store is set up once, under an inter-process file lock: MLflow creates the tables
  and runs its schema migrations on first open, and several processes opening a new file at
  once race and leave it half-built.
- A tracking URI with `user:password@` is never printed: MLflow's own "View run ... at <url>"
  lines are switched off for it (our run line prints the URI without the credentials).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from llem_mlflow.errors import TrackingError
from llem_mlflow.redact import redact_uri

# Connect (and DNS) within 5 s; an answer within 30 s (a login server hashes the password first,
# which takes seconds on a busy host; MLflow's own request timeout is 120 s).
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 30.0
SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"
# MLflow's switch for its "🏃 View run <name> at: <url>" lines.
SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"

_checked: set[str] = set()  # URIs already checked in this process


def open_client(tracking_uri: str | None = None) -> Any:
    """An MlflowClient for `tracking_uri` (default: MLflow's, from MLFLOW_TRACKING_URI), after the
    checks above (once per process and URI). Raises TrackingError (exit 2) with the fix."""
    from mlflow import MlflowClient, get_tracking_uri

    uri = tracking_uri or get_tracking_uri()
    if uri not in _checked:
        hide_credentials_from_mlflow_output(uri)
        scheme = urlparse(uri).scheme.lower()
        if scheme in ("http", "https"):
            check_server(uri)
        elif scheme == "sqlite":
            set_up_sqlite_store(uri)
        _checked.add(uri)
    return MlflowClient(tracking_uri=uri)


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI as we print it: without credentials."""
    if uri is None:
        from mlflow import get_tracking_uri

        uri = get_tracking_uri()
    return redact_uri(uri)


def hide_credentials_from_mlflow_output(uri: str) -> None:
    """MLflow prints "View run ... at <tracking URI>/#/..." when a run ends on a server; with
    credentials in the URI that line would show them. Turn it off then (a user's own setting wins)."""
    if redact_uri(uri) != uri:
        os.environ.setdefault(SUPPRESS_URL_PRINTING, "true")


# --- http(s): is the server there, and does it let us in? ------------------------------------
def check_server(uri: str, connect_s: float = CONNECT_TIMEOUT_S, answer_s: float = ANSWER_TIMEOUT_S) -> None:
    """One search request, no retries: TrackingError naming what is wrong and the fix.

    Standard library only (no MLflow import: `llem-mlflow run` calls it in the measuring process,
    before anything heavy). Credentials as MLflow reads them: MLFLOW_TRACKING_USERNAME/PASSWORD
    (or ~/.mlflow/credentials), MLFLOW_TRACKING_TOKEN, or the URI's user:password; TLS settings
    from MLFLOW_TRACKING_INSECURE_TLS / _SERVER_CERT_PATH / _CLIENT_CERT_PATH. With an auth plugin
    or AWS SigV4 (which we cannot reproduce) a 401/403 is left to MLflow to judge.
    """
    import urllib.error
    import urllib.request

    parsed = urlparse(uri)
    where = f"the MLflow tracking server at {redact_uri(uri)} (MLFLOW_TRACKING_URI)"
    host = parsed.hostname
    if not host:
        raise TrackingError(f"{where}: the URI has no host name; write it as http://HOST:PORT")
    _resolve(host, connect_s, where)
    port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=connect_s).close()
    except OSError as exc:
        raise TrackingError(f"{where}: {_connection_problem(exc, f'no connection within {connect_s:.0f} s')}") from None
    netloc = parsed.netloc.rpartition("@")[2]  # credentials go in a header, not the URL
    url = parsed._replace(netloc=netloc).geturl().rstrip("/") + SEARCH_ENDPOINT + "?max_results=1"
    headers, auth_known = _auth_headers(parsed)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=answer_s, context=_tls_context(parsed)):
            return
    except urllib.error.HTTPError as exc:
        status, reason = exc.code, exc.reason
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(f"{where}: {_connection_problem(exc, f'connected, but no answer within {answer_s:.0f} s')}") from None
    if status in (401, 403) and not auth_known:
        return  # an auth plugin or SigV4 signs MLflow's requests, not ours: MLflow will tell
    if status == 401:
        raise TrackingError(
            f"{where} answered 401 Unauthorized: it requires a login. Fix: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment, and check them"
        )
    if status == 403:
        raise TrackingError(
            f"{where} answered 403 Forbidden: it refused this user. Fix: ask its admin for permission, "
            "or log in as another user (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    if status == 404:
        raise TrackingError(
            f"{where} answered 404 for the MLflow REST API ({SEARCH_ENDPOINT}): this is not an MLflow tracking "
            "server, or the URI's path is wrong. Fix: use the address `mlflow server` prints (http://HOST:PORT)"
        )
    raise TrackingError(
        f"{where} answered HTTP {status} ({reason}) to a simple search. Fix: check the server's log; "
        "it may be starting up or overloaded"
    )


def _auth_headers(parsed: Any) -> tuple[dict[str, str], bool]:
    """The Authorization header MLflow would send, and whether we know MLflow's auth fully."""
    import base64
    import configparser

    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    credentials_file = Path("~/.mlflow/credentials").expanduser()
    if credentials_file.is_file():
        config = configparser.ConfigParser()
        config.read(credentials_file)
        section = config["mlflow"] if "mlflow" in config else {}
        username = username or section.get("mlflow_tracking_username")
        password = password or section.get("mlflow_tracking_password")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if not (username and password) and parsed.username:  # requests takes them from the URL
        username, password = parsed.username, parsed.password or ""
    known = not (os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_AWS_SIGV4", "").lower() == "true")
    if username and password is not None and (password or parsed.username):
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}, known
    if token:
        return {"Authorization": f"Bearer {token}"}, known
    return {}, known


def _tls_context(parsed: Any) -> Any:
    if parsed.scheme.lower() != "https":
        return None
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


def _resolve(host: str, timeout_s: float, where: str) -> None:
    # getaddrinfo has no timeout of its own: run it in a thread and stop waiting after timeout_s.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, None).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise TrackingError(
            f"{where}: looking up the host name {host!r} got no answer in {timeout_s:.0f} s (DNS). "
            "Fix: check the network and the host name"
        ) from None
    except OSError as exc:
        raise TrackingError(
            f"{where}: the host name {host!r} cannot be resolved (DNS: {exc.strerror or exc}). "
            "Fix: check the spelling of the host in MLFLOW_TRACKING_URI"
        ) from None
    finally:
        pool.shutdown(wait=False)


def _connection_problem(exc: BaseException, timed_out: str) -> str:
    """What a failed connection or request means, from the exception (and what it wraps)."""
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    text = f"{type(reason).__name__}: {reason}"
    if isinstance(reason, ConnectionRefusedError) or "Connection refused" in text:
        return (
            "connection refused: nothing listens on that host and port. Fix: start the server "
            "(`mlflow server --host 127.0.0.1 --port PORT`) or correct the port in MLFLOW_TRACKING_URI"
        )
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in text:
        return (
            f"{timed_out} (timeout). Fix: check that the host and port are right and reachable (firewall, VPN), "
            "and that the server is not overloaded or stuck"
        )
    if "SSL" in text or "CERTIFICATE" in text:
        return (
            f"the TLS handshake failed ({redact_uri(str(reason))[:300]}). Fix: use http:// for a server without TLS, or "
            "set MLFLOW_TRACKING_SERVER_CERT_PATH to its CA bundle (MLFLOW_TRACKING_INSECURE_TLS=true skips the check)"
        )
    return f"cannot reach it ({redact_uri(text)[:300]}). Fix: check MLFLOW_TRACKING_URI and that the server runs"


def check_tracking_server_from_environment() -> None:
    """`llem-mlflow run`'s early check, before anything heavy: MLFLOW_TRACKING_URI, when it is http(s)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if urlparse(uri).scheme.lower() in ("http", "https") and uri not in _checked:
        hide_credentials_from_mlflow_output(uri)
        check_server(uri)
        _checked.add(uri)


# --- sqlite: create the tables once, whoever comes first ---------------------------------------
def set_up_sqlite_store(uri: str) -> None:
    """Open the store under an exclusive lock, so the first open (tables, migrations, the default
    experiment) happens in one process while the others wait; later opens only verify it."""
    path = sqlite_path(uri)
    if path is None:  # in-memory
        return
    from mlflow import MlflowClient

    with _exclusive_lock(_lock_path(path)):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingError(broken_store_message(uri, path, exc)) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths start at the current folder)."""
    from sqlalchemy.engine.url import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


def broken_store_message(uri: str, path: Path, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    half_built = any(s in str(exc) for s in ("_alembic_tmp", "already exists", "duplicate column", "out-of-date database schema"))
    if not half_built:
        return f"cannot open the MLflow sqlite store {redact_uri(uri)}: {text}. Fix: check the path and its permissions"
    return (
        f"the MLflow sqlite store {path} is half-built ({text}): processes that opened it for the first time "
        "at once raced (llem-mlflow sets a new store up under a lock; `mlflow` commands run in parallel on a "
        "new file do not). Fix: if it holds no runs you need, delete it (and its mlruns/ folder) and run again. "
        "If it does: back it up, drop its tables named _alembic_tmp_*, then run `mlflow db upgrade "
        f"{redact_uri(uri)}`"
    )


def _lock_path(db: Path) -> Path:
    # In the temp folder, named after the database's absolute path, like MLflow's own init lock:
    # nothing is left beside the user's database. (Processes on other hosts sharing the file over
    # a network filesystem are not covered; sqlite is not safe there anyway.)
    digest = hashlib.sha256(str(db).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llem-mlflow-store-{digest}.lock"


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl; open without the lock
        yield
        return
    # Read-only is enough for flock, and works on a lock file another user created.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the process setting the store up is done
        yield
    finally:
        os.close(fd)  # closing releases the lock

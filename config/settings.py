"""ExTES Studio settings: one file, read from the environment.

Development defaults are safe to run on a laptop; production mode (DEBUG=0) requires SECRET_KEY
and turns on the secure-cookie/HTTPS settings that `manage.py check --deploy` asks for.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    """A value from NAME, or from the file named by NAME_FILE (mounted secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = envstr(name, "1" if default else "0").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envint(name: str, default: int) -> int:
    value = envstr(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", True)

DATA_DIR = Path(envstr("EXTES_DATA_DIR", str(BASE_DIR / "var"))).resolve()

SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "curation",
    "generation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "curation.context_processors.roles",
            ],
        },
    },
]

# SQLite under EXTES_DATA_DIR by default; PostgreSQL (or anything dj-database-url reads) via DATABASE_URL.
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'extes.sqlite3'}",
        conn_max_age=envint("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server read while a worker or an import writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file too: an in-memory database shared between threads locks whole tables
    # instead of waiting, unlike the real thing (inline jobs and live-server tests use threads).
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"  # annotators land on Review, leads on the dialogues
LOGOUT_REDIRECT_URL = "login"

# Sign-in throttling (django-axes), on the studio's login and the admin's alike: after
# EXTES_LOGIN_FAILURE_LIMIT failed passwords an account is locked out, even with the right
# password, until EXTES_LOGIN_COOLOFF_MINUTES pass without an attempt on it; a success resets its
# count. `manage.py axes_reset_username NAME` unlocks an account early.
# The count belongs to the account, from whatever address: keyed by username and address
# together, a guesser with many addresses (one IPv6 /64 is plenty) would get a fresh count on each;
# keyed by username or address, anyone's successful login would wipe their address's count, and
# behind a reverse proxy (every request from the proxy's address) five typos anywhere would lock
# everyone out. The price: whoever knows a username can keep that account locked.
# axes.W006 asks for the address in the key against rotating user agents or cookies, which a
# username key does not count by anyway.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("EXTES_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("EXTES_LOGIN_COOLOFF_MINUTES", 15))
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME.total_seconds() < 60:
    raise ImproperlyConfigured(
        "EXTES_LOGIN_FAILURE_LIMIT and EXTES_LOGIN_COOLOFF_MINUTES must be at least 1"
    )
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/login.html"  # with the lockout message, as HTTP 429
AXES_DISABLE_ACCESS_LOG = True  # keep failed attempts only, not a record of every login
AXES_VERBOSE = False  # no banner at every start-up, no line per reset: lockouts still log

LANGUAGE_CODE = "en"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "media/"
EXPORT_DIR = DATA_DIR / "exports"
MODELS_DIR = DATA_DIR / "models"
REJECTS_DIR = DATA_DIR / "rejects"

# Redis serves Celery's broker; results stay on database rows, never in a result backend.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

# The teacher LLM. With no base URL, the local SmolLM2 model (see generation/teacher.py) is used.
# The API key (EXTES_TEACHER_API_KEY or OPENAI_API_KEY) is read by the teacher itself, never here.
TEACHER_TIMEOUT = float(envstr("EXTES_TEACHER_TIMEOUT", "120"))
TEACHER_MAX_CONCURRENCY = envint("EXTES_TEACHER_MAX_CONCURRENCY", 16)
# torch's threads per worker process (0: torch's default, every core). A worker running many
# units at once (an HTTP teacher) spends less CPU on its encoders with 1; the local teacher
# writes one answer faster with every core.
WORKER_TORCH_THREADS = envint("EXTES_WORKER_TORCH_THREADS", 0)
TEACHER_MAX_RETRIES = envint("EXTES_TEACHER_MAX_RETRIES", 4)
# Structured output: auto (the strongest form the server takes, remembered per endpoint and
# model), json_schema, json_object (llama.cpp), or none (free text, read tolerantly).
TEACHER_RESPONSE_FORMAT = envstr("EXTES_TEACHER_RESPONSE_FORMAT", "auto")
if TEACHER_RESPONSE_FORMAT not in ("auto", "json_schema", "json_object", "none"):
    raise ImproperlyConfigured(
        "EXTES_TEACHER_RESPONSE_FORMAT must be auto, json_schema, json_object or none, "
        f"not {TEACHER_RESPONSE_FORMAT!r}"
    )
# Stream the teacher's answers (the job page shows a running unit's tokens as they come); an
# endpoint that does not stream is found out and asked plainly. off: never stream.
TEACHER_STREAM = envbool("EXTES_TEACHER_STREAM", True)
# The sentence embedder's and crisis classifier's dtype, read where they load
# (generation.embeddings.precision); a wrong value stops the studio here rather than a worker.
if envstr("EXTES_ENCODER_PRECISION", "auto").strip().lower() not in (
    "",
    "auto",
    "float32",
    "bfloat16",
):
    raise ImproperlyConfigured("EXTES_ENCODER_PRECISION must be auto, float32 or bfloat16")
# A claimed unit of generation work whose worker has not reported for this long is given to another.
GENERATION_LEASE_SECONDS = envint("EXTES_GENERATION_LEASE_SECONDS", 300)
GENERATION_MAX_ATTEMPTS = envint("EXTES_GENERATION_MAX_ATTEMPTS", 3)
# Gates for degenerate dialogues (generation/degenerate.py), each its own failure class, and
# overrides of their thresholds as a JSON object, e.g. {"scenario_margin": 0.3}.
GENERATION_GATES = envlist(
    "EXTES_GENERATION_GATES", "repetition,role_confusion,prompt_leakage,off_scenario"
)
_unknown_gates = set(GENERATION_GATES) - {
    "repetition",
    "role_confusion",
    "prompt_leakage",
    "off_scenario",
}
if _unknown_gates:
    raise ImproperlyConfigured(
        f"EXTES_GENERATION_GATES: unknown gate(s) {sorted(_unknown_gates)}; "
        "known: repetition, role_confusion, prompt_leakage, off_scenario"
    )
try:
    GENERATION_GATE_THRESHOLDS = json.loads(envstr("EXTES_GENERATION_GATE_THRESHOLDS", "{}"))
except ValueError as _error:
    raise ImproperlyConfigured(
        f"EXTES_GENERATION_GATE_THRESHOLDS must be a JSON object: {_error}"
    ) from None
GENERATION_QUEUE = envstr("EXTES_GENERATION_QUEUE", "generation")
# Training runs on a queue of its own, served by a solo worker (torch must not load in the
# default worker: a forking pool whose parent touched torch hangs).
TRAINING_QUEUE = envstr("EXTES_TRAINING_QUEUE", "training")
CELERY_TASK_ROUTES = {
    "generation.*": {"queue": GENERATION_QUEUE},
    "training.*": {"queue": TRAINING_QUEUE},
}
TRAINING_DIR = DATA_DIR / "training"  # one run folder per training job: checkpoints, adapter
# Replies scored per model when a job evaluates the base and the student on the test split:
# "all" (every supporter turn, so that intervals are as narrow as the split allows) or a number.
TRAINING_EVAL_LIMIT = (
    None
    if envstr("EXTES_EVAL_LIMIT", "all").strip().lower() == "all"
    else envint("EXTES_EVAL_LIMIT", 0)
)
TRAINING_EVAL_MAX_NEW_TOKENS = envint("EXTES_EVAL_MAX_NEW_TOKENS", 64)
TRAINING_EVAL_BATCH = envint("EXTES_EVAL_BATCH", 8)  # replies written together
# The worker writes progress at most this often; a job silent for a lease is taken as abandoned.
TRAINING_PROGRESS_SECONDS = float(envstr("EXTES_TRAINING_PROGRESS_SECONDS", "2"))
TRAINING_LEASE_SECONDS = envint("EXTES_TRAINING_LEASE_SECONDS", 900)
RELEASE_LEASE_SECONDS = envint(
    "EXTES_RELEASE_LEASE_SECONDS", 120
)  # a silent release build's worker counts as dead
# Releases of at least this many dialogues have their JSON and Parquet files written by a second
# process while the first freezes (curation.releases.build.ChildWriter); 0: always in one process.
RELEASE_CHILD_WRITER_FROM = envint("EXTES_RELEASE_CHILD_WRITER_FROM", 10000)

# Review queue: how many annotators review each dialogue, and how long a claimed one stays theirs.
REVIEWS_PER_DIALOGUE = envint("EXTES_REVIEWS_PER_DIALOGUE", 2)
REVIEW_LEASE_MINUTES = envint("EXTES_REVIEW_LEASE_MINUTES", 30)
# Annotator wellbeing: at most this many crisis-flagged dialogues (cleared by a lead) per
# annotator per day; 0 keeps them away from annotators altogether.
CRISIS_DAILY_CAP = envint("EXTES_CRISIS_DAILY_CAP", 3)
# The crisis gate's classifier layer (generation.crisis_gate): "worker" screens imported dialogues
# in a worker before anyone reviews them (they wait as "screening"); "inline" screens them where
# they are created; "off" leaves the rules alone. Generation, DRI and edits run it where they are.
SAFETY_SCREEN = envstr("EXTES_SAFETY_SCREEN", "worker").strip().lower()
if SAFETY_SCREEN not in ("worker", "inline", "off"):
    raise ImproperlyConfigured("EXTES_SAFETY_SCREEN must be worker, inline or off")
# A third layer: the configured teacher (a real endpoint only) judges each new dialogue's seeker
# turns, in JSON with the evidence sentence (generation.crisis_teacher). One request per dialogue.
SAFETY_TEACHER_CHECK = envbool("EXTES_SAFETY_TEACHER_CHECK", False)

# Import and generation reject a dialogue with more turns than this (ESConv's longest has 87).
MAX_UTTERANCES = envint("EXTES_MAX_UTTERANCES", 100)

# Dialogue list: rows per page; counts above this are shown as "N+" to keep the page fast.
DIALOGUES_PER_PAGE = envint("EXTES_DIALOGUES_PER_PAGE", 50)
DIALOGUE_COUNT_CAP = envint("EXTES_DIALOGUE_COUNT_CAP", 100_000)

# The agreement page: with up to this many submitted labels its figures are computed on the
# request (well under a second); above it a worker computes them and the page shows the last
# ones, with their time, until the new ones are in.
LEAD_FIGURES_INLINE_MAX = envint("EXTES_LEAD_FIGURES_INLINE_MAX", 5_000)

SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", 60 * 60 * 12)
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): only files from this origin run or style the pages: no
# inline scripts, handlers or styles (templates use static/js and static/css). Two fixed inline
# styles are allowed by their hashes: the standalone 500 page's body (a style attribute, hence
# 'unsafe-hashes') and the evaluation report's <style> (training/evaluate.py's report_html);
# tests/test_login_security.py names the hash to put here when either changes. img-src allows
# data: for the empty favicon. Production enforces it; development only reports (in the browser
# console) what it would refuse.
csp_policy = {
    "DIRECTIVES": {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": [
            "'self'",
            "'unsafe-hashes'",
            "'sha256-8tLFodv/dQP5eHRrgXn4lm8nPVhK2+w94c5W1QuvOAU='",  # 500.html
            "'sha256-f7tRfyDpbUyIC6WJspFRdwnBJ+KPT602aotmL3NEuNc='",  # evaluation report
        ],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
    }
}
CONTENT_SECURITY_POLICY = None if DEBUG else csp_policy
CONTENT_SECURITY_POLICY_REPORT_ONLY = csp_policy if DEBUG else None

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"forbidden_on_one_line": {"()": "config.logfilters.ForbiddenOnOneLine"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["forbidden_on_one_line"],
        }
    },
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One INFO line per teacher request is noise (and costs CPU at scale).
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # Every successful sign-in and counter reset at INFO is noise; lockouts are warnings.
        "axes": {"level": "WARNING"},
    },
}

if (BASE_DIR / "config" / "local_settings.py").exists():
    from config.local_settings import *  # noqa: F403

"""Django settings of the peer: production-like (DEBUG off), the default middleware, JSON only."""

import os

SECRET_KEY = os.environ.get("BENCH_PEER_SECRET", "bench-peer-not-a-secret-" + "x" * 40)
DEBUG = False
ALLOWED_HOSTS = [".localhost", "localhost", "127.0.0.1"]
ROOT_URLCONF = "bench.peers.django_todo.urls"
WSGI_APPLICATION = "bench.peers.django_todo.wsgi.application"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "bench.peers.django_todo.todos",
]

# Django's default middleware, less the ones for templates and messages this API has none of.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_PEER_DB", "peer.sqlite3"),
        # Django 5.1+: what Bastion's SQLite driver does too (WAL, synchronous=NORMAL, a busy timeout,
        # writers take the lock up front).
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
        # Persistent connections (Django closes them after every request by default), as the Django docs
        # advise for any deployment that cares about speed.
        "CONN_MAX_AGE": 600,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}

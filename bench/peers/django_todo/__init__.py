"""The TODO API the way a Django user writes it: Django + Django REST framework, session cookies and CSRF,
SQLite in WAL mode, a ``Todo`` model and a ``ModelViewSet``.

``BENCH_PEER_DB`` names the SQLite file. Served by gunicorn as ``bench.peers.django_todo.wsgi:application``;
``python -m bench.peers.django_todo.setup`` creates the schema, the users and the todos (bulk inserts).
"""

"""gunicorn settings of the peer (``-c python:bench.peers.fastapi_todo.gunicorn_conf``): uvicorn workers.

Named explicitly so that a ``gunicorn.conf.py`` in the working directory (a Bastion checkout has one) is not
read. No access log: gunicorn keeps none without ``--access-logfile``, and the uvicorn worker hands its access
logger gunicorn's (empty) handlers, so uvicorn logs no request either.
"""

worker_class = "uvicorn_worker.UvicornWorker"
workers = 2
accesslog = None
# The admin control socket (gunicorn 24+) lives at one fixed path per user; two servers would collide there.
control_socket_disable = True

"""``python -m bench.peers.django_todo.setup DB PLAN_JSON PASSWORD``: schema, users and todos (bulk inserts).

PLAN_JSON is a list of ``[username, todos]``; each user's todos get consecutive ids in plan order
(the first user's start at 1), and the ids are printed as JSON ``{username: [first, last]}``.
"""

import json
import os
import sys


def main(argv: list[str]) -> int:
    db, plan_path, password = argv
    os.environ["BENCH_PEER_DB"] = db
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.django_todo.settings")
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction

    from bench.peers.django_todo.todos.models import Todo

    call_command("migrate", run_syncdb=True, verbosity=0)
    hashed = make_password(password)
    plan = json.loads(open(plan_path).read())
    ids, next_id = {}, 1
    with transaction.atomic():
        for username, count in plan:
            user = User.objects.create(username=username, password=hashed)
            Todo.objects.bulk_create([Todo(id=next_id + i, owner=user, text=f"todo {i}") for i in range(count)],
                                     batch_size=5000)
            ids[username] = [next_id, next_id + count - 1]
            next_id += count
    print(json.dumps(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m bench.peers.fastapi_todo.setup DB PLAN_JSON PASSWORD``: schema, users and todos (bulk inserts).

PLAN_JSON is a list of ``[username, todos]``; each user's todos get consecutive ids in plan order
(the first user's start at 1), and the ids are printed as JSON ``{username: [first, last]}``.
"""

import json
import os
import sys
from pathlib import Path

BATCH = 5000


def main(argv: list[str]) -> int:
    db, plan_path, password = argv
    os.environ["BENCH_PEER_DB"] = db
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from bench.peers.fastapi_todo.db import engine
    from bench.peers.fastapi_todo.models import Base, Todo, User
    from bench.peers.fastapi_todo.security import get_password_hash

    Base.metadata.create_all(engine)
    hashed = get_password_hash(password)
    plan = json.loads(Path(plan_path).read_text())
    ids, next_id = {}, 1
    with Session(engine) as session, session.begin():
        for username, count in plan:
            user = User(username=username, hashed_password=hashed)
            session.add(user)
            session.flush()
            for start in range(0, count, BATCH):
                rows = [{"id": next_id + i, "owner_id": user.id, "text": f"todo {i}", "done": False, "vsn": 1}
                        for i in range(start, min(count, start + BATCH))]
                session.execute(insert(Todo), rows)
            ids[username] = [next_id, next_id + count - 1]
            next_id += count
    engine.dispose()
    print(json.dumps(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

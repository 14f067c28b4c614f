"""The application: ``bench.peers.fastapi_todo.main:app``."""

from fastapi import APIRouter, FastAPI

from bench.peers.fastapi_todo.routes import login, todos

api_router = APIRouter()
api_router.include_router(login)
api_router.include_router(todos)

app = FastAPI(title="Todo peer", openapi_url="/api/openapi.json")
app.include_router(api_router, prefix="/api")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}

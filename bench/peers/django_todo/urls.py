from django.urls import include, path
from rest_framework.routers import SimpleRouter

from bench.peers.django_todo.todos import views

router = SimpleRouter()
router.register("todos", views.TodoViewSet, basename="todo")

urlpatterns = [
    path("api/login/", views.Login.as_view()),
    path("api/csrf/", views.csrf),
    path("healthz", views.healthz),
    path("api/", include(router.urls)),
]

from django.conf import settings
from django.db import models


class Todo(models.Model):
    """One thing to do, private to its owner; ``vsn`` is its version, checked by every update."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="todos")
    text = models.CharField(max_length=1000)
    done = models.BooleanField(default=False)
    vsn = models.PositiveIntegerField(default=1)

    class Meta:
        app_label = "todos"
        ordering = ["id"]
        indexes = [models.Index(fields=["owner", "id"])]

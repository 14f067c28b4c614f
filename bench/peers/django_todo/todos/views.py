from django.contrib.auth import authenticate, login
from django.db.models import F
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import ensure_csrf_cookie
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Todo


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "record changed"


class TodoSerializer(serializers.ModelSerializer):
    class Meta:
        model = Todo
        fields = ["id", "vsn", "text", "done"]
        read_only_fields = ["id"]

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("blank")
        return value

    def create(self, validated_data):
        validated_data.pop("vsn", None)
        return super().create(validated_data)

    def update(self, instance, validated_data):
        # The version the client saw must be the stored one: one conditional UPDATE.
        vsn = validated_data.pop("vsn", instance.vsn)
        changed = Todo.objects.filter(pk=instance.pk, vsn=vsn).update(vsn=F("vsn") + 1, **validated_data)
        if not changed:
            raise Conflict()
        for name, value in validated_data.items():
            setattr(instance, name, value)
        instance.vsn = vsn + 1
        return instance


class TodoViewSet(viewsets.ModelViewSet):
    serializer_class = TodoSerializer
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self):
        return Todo.objects.filter(owner=self.request.user)

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class Login(APIView):
    permission_classes = [permissions.AllowAny]

    def post(self, request):
        user = authenticate(request, username=request.data.get("username"), password=request.data.get("password"))
        if user is None:
            return Response({"detail": "invalid username or password"}, status=401)
        login(request, user)
        return Response({"username": user.username, "csrftoken": get_token(request)})


@ensure_csrf_cookie
def csrf(request):
    return JsonResponse({"csrftoken": get_token(request)})


def healthz(request):
    return JsonResponse({"status": "ok"})

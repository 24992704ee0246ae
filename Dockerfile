# One image for every role; the command picks it (docker-compose.yml, docs/operations.md):
#   API          gunicorn notifications_project.wsgi --bind 0.0.0.0:8000   (the default CMD)
#   dispatchers  python manage.py run_dispatchers --processes N
#   housekeeping python manage.py qcluster
#   migrations   python manage.py migrate --noinput
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 DJANGO_STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DATABASE_URL=postgres://unused/none python manage.py collectstatic --noinput
# Run as an unprivileged user; the code and static files stay read-only to it.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent app
USER app
EXPOSE 8000
# Every gunicorn started in this image reads the project's gunicorn settings (Prometheus
# multiprocess directory, worker exit bookkeeping, log format), also under a command of its own.
ENV GUNICORN_CMD_ARGS="--config notifications_project/gunicorn.conf.py"
CMD ["gunicorn", "-c", "notifications_project/gunicorn.conf.py", "notifications_project.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4"]

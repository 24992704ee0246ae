# One image for every role: the API (gunicorn), the dispatchers and migrations.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 DJANGO_STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DATABASE_URL=postgres://unused/none python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["gunicorn", "notifications_project.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4"]

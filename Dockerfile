# One image for every process of docker-compose.yml: web (gunicorn), workers, migrate, dashboard.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUNNER_DATA_DIR=/data \
    PORT=8000

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

# Run as an unprivileged user that owns the data folder (uploads, artifacts) and nothing else.
RUN useradd --create-home --uid 10001 runner \
    && mkdir -p /data/uploads /data/artifacts \
    && chown -R runner:runner /data
USER runner
VOLUME ["/data"]

EXPOSE 8000
# The tables first (as the Procfile's web line does): a web process on a database without them
# would only answer 503. gunicorn reads ./gunicorn.conf.py: 0.0.0.0:$PORT, $WEB_CONCURRENCY processes.
CMD ["sh", "-c", "python -m runner migrate && exec gunicorn 'api:create_app()'"]

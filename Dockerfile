# pagerbridge: one image for every role (migrate, api, worker, beat); the command picks the role.
#   docker build -t pagerbridge .
#   docker run --env-file .env -p 8080:8080 pagerbridge            # the api
#   docker run --env-file .env pagerbridge worker --concurrency 4  # a worker
FROM python:3.11-slim

# Unbuffered output: logs reach `docker logs` as they are written, not when a buffer fills.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so volume permissions and Kubernetes' runAsNonRoot work the same everywhere.
RUN groupadd --system --gid 10001 pagerbridge \
    && useradd --system --uid 10001 --gid pagerbridge --no-create-home \
       --home-dir /app --shell /usr/sbin/nologin pagerbridge

WORKDIR /app

# Dependencies come from pyproject.toml (the one list); psycopg[binary] ships wheels, so no
# compiler is needed. setuptools needs README.md because pyproject's `readme` names it.
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install --no-cache-dir .

# The code stays root-owned and read-only to the service; beat writes its schedule file to the
# temp directory (PAGERBRIDGE_BEAT_SCHEDULE_PATH empty), which is writable for everyone.
USER pagerbridge

EXPOSE 8080

# No HEALTHCHECK here on purpose: this image also runs worker, beat and the one-shot migrate,
# which serve no /healthz and would all be marked unhealthy. docker-compose.yml gives the api
# service its own healthcheck on /healthz.
ENTRYPOINT ["pagerbridge"]
CMD ["api", "--host", "0.0.0.0", "--port", "8080"]

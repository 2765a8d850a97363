# apiguard: the APICRYPT charter SMTP proxy, for a practice server.
#   docker build -t apiguard .
# Ports: 2525 submission (STARTTLS), 2465 implicit TLS, 9025 ops (/metrics,
# /healthz, /readyz), 8025 review page when enabled. State: /var/lib/apiguard.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY apiguard ./apiguard
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APIGUARD_CONFIG=/etc/apiguard/apiguard.toml
# A fixed numeric id, so that mounted certificates can be made readable by it.
RUN groupadd --system --gid 10025 apiguard \
    && useradd --system --uid 10025 --gid apiguard --no-create-home \
        --home-dir /var/lib/apiguard --shell /usr/sbin/nologin apiguard \
    && install -d -o apiguard -g apiguard -m 0700 /var/lib/apiguard
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels
COPY config/docker.toml /etc/apiguard/apiguard.toml
USER 10025:10025
WORKDIR /var/lib/apiguard
VOLUME ["/var/lib/apiguard"]
EXPOSE 2525 2465 8025 9025
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9025/readyz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["apiguard"]
CMD ["serve"]

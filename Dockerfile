# One image for every orderflow process; docker-compose.yml picks the command.
# Python 3.11.16 on Debian bookworm, pinned by the digest of its multi-arch index as published in
# docker-library/repo-info (repos/python/remote/3.11-slim-bookworm.md at bc9bbb47fc70).
FROM python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY . .
# The mount points of docker-compose's named volumes exist in the image, owned by the app user:
# Docker copies that ownership into a new volume, so the processes (not root) can write there.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && useradd --system --uid 10001 orderflow \
 && mkdir -p /run/orderflow /var/lib/orderflow/metrics \
 && chown -R orderflow /app /run/orderflow /var/lib/orderflow
USER orderflow
EXPOSE 8000
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000"]

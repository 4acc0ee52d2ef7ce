# The ESF image: the library, its CLI (`esf`) and the Vault client, on Python 3.11.
# Your application goes on top of it (see docs/deploy.md):
#     FROM esf:local
#     COPY myapp /app/myapp
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs: no tests, no .git, no local .venv in the image.
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY esf ./esf
COPY tasks ./tasks
COPY workers ./workers
COPY beat ./beat
COPY plugins ./plugins
RUN pip install ".[vault]" && rm -rf /src

# Never run workers as root: a job runs arbitrary application code.
RUN useradd --create-home --uid 10001 esf && mkdir -p /app /var/lib/esf && chown esf /var/lib/esf
WORKDIR /app
ENV PYTHONPATH=/app \
    ESF_DATA_DIR=/var/lib/esf
USER esf

CMD ["esf", "--help"]

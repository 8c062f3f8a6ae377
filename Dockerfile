# imds as a container image: the EC2 instance metadata service for the containers beside it.
# docs/containers.md explains how to run it; compose.yaml is the worked example.
#
#   docker build -t imds:local .
#   docker run --rm --sysctl net.ipv4.ip_unprivileged_port_start=80 imds:local
#
# It runs as a non-root user and listens on port 80 (IMDS_HOST=0.0.0.0, IMDS_PORT=80): give
# it the unprivileged-port sysctl above (a per-container setting; recent Docker engines
# already default it to 0) or run it with a capability as docs/containers.md says.
#
# BASE: any image with python3 (3.11+) and its venv module; the build copies the virtual
# environment between two stages of the same base, so its interpreter path stays valid.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/imds \
 && /opt/imds/bin/pip install --quiet 'setuptools>=68'
# Dependencies first, in a layer of their own: changing the code does not reinstall them.
COPY pyproject.toml README.md /src/
RUN python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["fast"]))' > /src/requirements.txt \
 && /opt/imds/bin/pip install --quiet -r /src/requirements.txt
COPY imds /src/imds
RUN /opt/imds/bin/pip install --quiet --no-build-isolation --no-deps --force-reinstall /src \
 && /opt/imds/bin/pip uninstall --quiet --yes pip setuptools \
 && find /opt/imds -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/imds --create-home \
        --shell /usr/sbin/nologin imds
COPY --from=build /opt/imds /opt/imds
ENV PATH=/opt/imds/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IMDS_HOST=0.0.0.0 \
    IMDS_PORT=80 \
    IMDS_STATE_DIR=/var/lib/imds
USER imds
WORKDIR /var/lib/imds
EXPOSE 80
# A token PUT to where the server listens (same IMDS_* settings); see imds/health.py.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python3", "-m", "imds.health"]
ENTRYPOINT ["imds", "serve"]

# The k8spacket agent image (docs/chart.md, "Image"). Build from the repository root:
#   docker build -t ghcr.io/k8spacket-py/k8spacket:0.2.0 .
# Stage 1 installs the package and its locked dependencies into a virtual
# environment; stage 2 copies only that environment onto the same slim base, adds
# the runtime libraries, and gives a copy of the interpreter the one file
# capability capture needs, so the agent runs as a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/k8spacket
# Dependencies first (their layer survives source changes), pinned with hashes.
COPY requirements.lock ./
RUN /opt/k8spacket/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/k8spacket/bin/pip install --no-deps . \
    && /opt/k8spacket/bin/pip uninstall -y pip setuptools wheel \
    && find /opt/k8spacket -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
# libpcap0.8: scapy compiles the kernel BPF filter with it (no tcpdump needed).
# graphviz: `dot` draws the /graph topology page.
# iproute2: the seed's interfaces.command pipelines call `ip`.
# The capture opens AF_PACKET sockets, which needs CAP_NET_RAW. A non-root process
# gets a capability granted in the pod spec only through a file capability on the
# program it runs, so the agent runs under copies of the interpreter carrying
# them, placed in the venv's bin/ (beside its pyvenv.cfg, so they use the venv
# copied in below): k8spacket-python has cap_net_raw; k8spacket-python-conntrack
# adds cap_net_admin for reading the kernel's conntrack table. The plain `python`
# has none. setcap (libcap2-bin) is removed again in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap0.8 graphviz iproute2 libcap2-bin \
    && groupadd --gid 1000 k8spacket \
    && useradd --uid 1000 --gid 1000 --home-dir /home/k8spacket --no-create-home \
       --shell /usr/sbin/nologin k8spacket \
    && mkdir -p /home/k8spacket /opt/k8spacket/bin \
    && cp /usr/local/bin/python3.11 /opt/k8spacket/bin/k8spacket-python \
    && cp /usr/local/bin/python3.11 /opt/k8spacket/bin/k8spacket-python-conntrack \
    && setcap cap_net_raw+ep /opt/k8spacket/bin/k8spacket-python \
    && setcap cap_net_raw,cap_net_admin+ep /opt/k8spacket/bin/k8spacket-python-conntrack \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/k8spacket /opt/k8spacket
ENV PATH=/opt/k8spacket/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/k8spacket
USER 1000:1000
WORKDIR /home/k8spacket
EXPOSE 6676
ENTRYPOINT ["/opt/k8spacket/bin/k8spacket-python", "-m", "k8spacket.cli"]
CMD ["run"]

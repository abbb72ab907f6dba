# The pipeline image: Airflow 3 (CeleryExecutor), dbt, MLflow and the crm, ml and notify
# packages from uv.lock. Also serves the MLflow tracking server.
FROM python:3.11-slim-bookworm
ENV UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 UV_COMPILE_BYTECODE=1
RUN apt-get update && apt-get install -y --no-install-recommends curl libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir uv==0.13.9 \
 && useradd --create-home --uid 50000 airflow \
 && mkdir -p /opt/airflow /mlartifacts && chown airflow /opt/airflow /mlartifacts
WORKDIR /opt/shop-crm
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY crm ./crm
COPY ml ./ml
COPY notify ./notify
COPY dags ./dags
COPY dbt_project ./dbt_project
COPY campaigns ./campaigns
RUN uv sync --frozen --no-dev && chown -R airflow /opt/shop-crm
USER airflow
ENV AIRFLOW_HOME=/opt/airflow AIRFLOW__CORE__DAGS_FOLDER=/opt/shop-crm/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False CRM_HOME=/opt/airflow/crm

# The pipeline image: Airflow 3, dbt and the crm package from uv.lock.
FROM python:3.11-slim-bookworm
ENV UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir uv==0.13.9 \
 && useradd --create-home --uid 50000 airflow
WORKDIR /opt/shop-crm
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY crm ./crm
COPY dags ./dags
COPY dbt_project ./dbt_project
RUN uv sync --frozen --no-dev && chown -R airflow /opt/shop-crm
USER airflow
ENV AIRFLOW_HOME=/opt/airflow AIRFLOW__CORE__DAGS_FOLDER=/opt/shop-crm/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

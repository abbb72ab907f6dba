-- Airflow keeps its metadata in its own database on the same server.
create database airflow owner crm;

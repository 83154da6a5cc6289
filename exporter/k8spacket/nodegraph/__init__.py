"""Node Graph API: connection store answers for Grafana."""

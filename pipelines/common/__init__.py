"""What every pipeline is composed from: declared options and the Kafka → decoded-rows source."""

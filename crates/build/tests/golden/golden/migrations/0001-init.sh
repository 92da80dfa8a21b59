#!/bin/sh
echo migrated >> /data/db

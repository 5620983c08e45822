#!/bin/sh
# Prints what the image was built for and what it runs on now.
echo "hello from archfarm"
echo "built for:  $(cat /etc/archfarm/platform) (uname -m at build time: $(cat /etc/archfarm/arch))"
echo "running on: $(uname -m)"

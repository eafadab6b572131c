#!/bin/sh
echo "greetings"

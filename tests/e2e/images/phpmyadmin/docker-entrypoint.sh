#!/bin/bash
# Entry point of the phpMyAdmin stand-in: a fresh cookie-encryption secret for this
# container (the package made one at build time, shared by every container of the
# image) and, with HIDE_PHP_VERSION set, no PHP version in the response headers.
set -euo pipefail
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
printf "<?php\n\$cfg['blowfish_secret'] = hex2bin('%s');\n" "$secret" >/var/lib/phpmyadmin/blowfish_secret.inc.php
chown root:www-data /var/lib/phpmyadmin/blowfish_secret.inc.php
chmod 0640 /var/lib/phpmyadmin/blowfish_secret.inc.php
if [[ -n ${HIDE_PHP_VERSION:-} ]]; then
  echo 'expose_php = Off' >/etc/php/8.2/apache2/conf.d/99-hide-php-version.ini
fi
exec "$@"
